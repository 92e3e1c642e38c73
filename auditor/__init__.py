"""auditor: audit trained classifiers for backdoors (trojans) and spurious features."""

__version__ = "0.1.0"
