"""Process-wide coordination of CPU-heavy work.

torch (resampling, speech detection, the model) runs one call at a time per process: on a CPU two
concurrent torch calls each start their own thread team and oversubscribe the cores, which costs far
more than it gains. Decoding and database work run freely in other threads.
"""

from __future__ import annotations

import threading

compute_lock = threading.Lock()
