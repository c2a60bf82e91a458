"""hydra/sweeper=optuna: the hydra-optuna-mlflow-sweeper plugin, rerunning interrupted trials first (seqexp.search)."""

from __future__ import annotations

from hydra_plugins.hydra_optuna_sweeper.mlflow_optuna_sweeper import MLflowOptunaSweeper

from seqexp.search import requeue_interrupted


class OptunaSweeper(MLflowOptunaSweeper):
    """The plugin's sweeper; a command runs its study's trials alone (one process at a time)."""

    def _run_trials(self, study, **kwargs) -> None:
        requeue_interrupted(study)
        super()._run_trials(study=study, **kwargs)
