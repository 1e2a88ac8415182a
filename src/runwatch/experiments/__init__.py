"""Experiment plugins: step programs and simulators that an experiment's pipelines call.

An experiment registers itself under the ``runwatch.experiments`` entry point with a
module that has ``register(app)``; the built-in ``juno`` plugin registers the same way
an outside one would. Nothing in the engine imports an experiment.
"""
