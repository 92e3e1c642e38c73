"""Report writers: each output format is a pure function of an :class:`auditor.scan.AuditReport`."""
