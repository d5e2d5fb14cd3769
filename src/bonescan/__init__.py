"""bonescan: AI-assisted reading of whole-body bone scintigraphy."""

__version__ = "0.1.0"
