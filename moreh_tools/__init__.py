"""moreh-tools: share GPU servers the way Moreh's MoAI/HAC platform does."""

__version__ = "0.1.0"
