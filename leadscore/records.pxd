# Cython declarations for leadscore/records.py (pure-Python mode: the .py is the source).
# Each effect kind is read through a name of its C type (engine.pxd): struct reads, not
# attribute lookups; format_ts and round4 are direct C calls (events.pxd).
cimport cython
from leadscore.events cimport format_ts, round4
from leadscore.engine cimport PointChange, SegmentChanged, StageChanged, TagChanged, TriggerFired

@cython.locals(p=PointChange, s=StageChanged, f=TriggerFired, g=SegmentChanged, a=TagChanged,
               rec=dict)
cpdef dict effect_record(str contact, object effect, object action=*)
