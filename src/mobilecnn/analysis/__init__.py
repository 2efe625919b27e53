"""Analysis: complexity in the papers' convention and the papers' tables regenerated beside the published figures."""

from .complexity import (
    LayerStats,
    ModelProfile,
    ProfileConfig,
    count_macs,
    peak_activation_bytes,
    profile,
    profile_config,
)
from .tables import TablesConfig, paper_tables, tables_markdown, write_tables

__all__ = ["ModelProfile", "LayerStats", "ProfileConfig", "profile", "profile_config", "count_macs",
           "peak_activation_bytes", "paper_tables", "tables_markdown", "TablesConfig", "write_tables"]
