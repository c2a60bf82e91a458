"""The comparison report: which fine-tuning strategy wins, with numbers straight from MLflow.

``python -m seqexp.report <experiment name | sweep id>`` writes ``report.md``
(PNG figures beside it) and a self-contained ``report.html``. From Python::

    from seqexp.report import build_report, collect_report, paired_bootstrap
    path = build_report("sqlite:///mlruns.db", "seqexp", "reports/seqexp")
"""

from seqexp.report.build import ReportData, build_report, collect_report, write_report
from seqexp.report.collect import ReportError
from seqexp.report.significance import BootstrapResult, SentenceCounts, count_sentences, paired_bootstrap

__all__ = [
    "BootstrapResult",
    "ReportData",
    "ReportError",
    "SentenceCounts",
    "build_report",
    "collect_report",
    "count_sentences",
    "paired_bootstrap",
    "write_report",
]
