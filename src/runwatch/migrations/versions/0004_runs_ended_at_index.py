"""runs indexes for the recent-runs page: by end time, and by end time or number within a
status

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 22:20:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_runs_ended_at"), "runs", ["ended_at"], unique=False)
    op.create_index("ix_runs_status_ended_at", "runs", ["status", "ended_at"], unique=False)
    op.create_index("ix_runs_status_number", "runs", ["status", "number"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_runs_status_number", table_name="runs")
    op.drop_index("ix_runs_status_ended_at", table_name="runs")
    op.drop_index(op.f("ix_runs_ended_at"), table_name="runs")
