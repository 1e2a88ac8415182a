from __future__ import annotations

from runwatch.cli import main

main()
