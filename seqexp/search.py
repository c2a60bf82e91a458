"""Optuna search (hydra/sweeper=optuna): hydra-optuna-mlflow-sweeper, plus continuing interrupted trials.

The sweeper class is ``hydra_plugins.seqexp_optuna.OptunaSweeper`` (Hydra loads sweepers only from
the ``hydra_plugins`` namespace package).

A trial whose process was killed stays RUNNING in the study forever, and the plugin would replace
it with a fresh sample: the killed run's checkpoint would never be used. Before any trial starts,
this sweeper marks such trials FAIL and enqueues their parameters, so the next trial has the same
config, hence the same fingerprint, and ``python -m seqexp.run`` resumes its MLflow run from its
checkpoint (``seqexp.training.checkpoints``). Everything else is the plugin's.
"""

from __future__ import annotations

import logging

import optuna

log = logging.getLogger("seqexp.search")


def requeue_interrupted(study: optuna.Study) -> int:
    """RUNNING trials of a study no process is running: FAIL them and ask their parameters again."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        log.info("trial %d (%s) was interrupted: it runs again", trial.number, trial.params)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params)
    return len(stale)
