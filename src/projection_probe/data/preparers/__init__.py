"""Preparers for the paper's four datasets. Importing this package registers their source kinds
(``plantdoc``, ``dtd``, ``dermnet``, ``crisismmd``) with ``projection_probe.data.sources``."""
from projection_probe.data.preparers import crisismmd, dermnet, dtd, plantdoc  # noqa: F401 (registers)
