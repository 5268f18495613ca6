"""Overdue-repayment reminder dispatcher."""

from dispatcher.masking import install_record_masking

__version__ = "0.1.0"

install_record_masking()  # personal data never reaches a log line unmasked, whoever handles the record
