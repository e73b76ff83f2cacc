"""Figures (matplotlib) and a self-contained HTML report from a result tree (DESIGN.md §4)."""
from .figures import result_figures
from .html import write_report

__all__ = ["result_figures", "write_report"]
