"""Analysis: complexity in the papers' convention and the papers' tables regenerated beside the published figures."""

from .complexity import LayerStats, ModelProfile, count_macs, peak_activation_bytes, profile
from .tables import paper_tables, tables_markdown

__all__ = ["ModelProfile", "LayerStats", "profile", "count_macs", "peak_activation_bytes", "paper_tables",
           "tables_markdown"]
