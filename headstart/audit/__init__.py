"""Looking at the data through the cache: duplicates, split leakage, label issues, outliers, maps, reports.

- `run.audit` finds the problems and writes audit.json, suspects.txt and montages;
- `projection.make_map` draws the features in 2-D (PNG, or one HTML file with thumbnails);
- `report.make_report` puts a run or a comparison (and an audit) into one self-contained HTML page.
"""

from headstart.audit.run import AuditResult, audit, load_audit

__all__ = ["AuditResult", "audit", "load_audit"]
