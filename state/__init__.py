"""Redis state and its formats. The codec may load compiled (see leadscore/accel.py)."""

from leadscore.accel import compiled_path as _compiled_path

__path__[:0] = _compiled_path(__file__)
