"""dmlrs: deep metric learning for remote-sensing scene characterisation and retrieval."""

__version__ = "0.1.0"
