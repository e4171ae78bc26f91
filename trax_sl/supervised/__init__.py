"""Supervised training: learning-rate schedules (more modules join as they land)."""

from trax_sl.supervised import lr_schedules
