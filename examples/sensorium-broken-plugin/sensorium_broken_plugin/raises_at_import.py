"""Raises while being imported, as a plugin with a missing dependency would."""

raise ImportError("this plugin needs a library that is not installed (deliberately broken)")
