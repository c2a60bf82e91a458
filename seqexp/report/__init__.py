"""The comparison report: which fine-tuning strategy wins, with numbers straight from MLflow.

``python -m seqexp.report <experiment name | sweep id>`` writes ``report.md``
(PNG figures beside it) and a self-contained ``report.html``. From Python::

    from seqexp.report import aso, build_report, collect_report, paired_bootstrap
    path = build_report("sqlite:///mlruns.db", "seqexp", "reports/seqexp", tuned=["optim.lr"])
"""

from seqexp.report.aso import AsoResult, aso
from seqexp.report.build import ReportData, build_report, collect_report, write_report
from seqexp.report.collect import ReportError
from seqexp.report.significance import BootstrapResult, SentenceCounts, count_sentences, holm, paired_bootstrap

__all__ = [
    "AsoResult",
    "BootstrapResult",
    "ReportData",
    "ReportError",
    "SentenceCounts",
    "aso",
    "build_report",
    "collect_report",
    "count_sentences",
    "holm",
    "paired_bootstrap",
    "write_report",
]
