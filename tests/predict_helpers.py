"""A small generated CRM export for the predictive tests: signal, noise, blanks,
placeholders and one column filled in after the outcome."""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path


def make_table(path: Path, rows: int = 1200, seed: int = 3) -> Path:
    """A small CRM export with signal, noise, blanks, placeholders and one leaky column."""
    rng = random.Random(seed)
    header = ["Lead Id", "Source", "Role", "Visits", "Minutes", "Country", "Status", "Won"]
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(header)
        for i in range(rows):
            source = rng.choice(["Google", "Referral", "Direct", "Chat", "Partner"])
            role = rng.choice(["Student", "Manager", "Engineer", "Select", ""])
            visits = rng.choice([0, 1, 2, 3, 5, 8, 13, 30]) if rng.random() > 0.05 else ""
            minutes = round(rng.expovariate(1 / 300), 1)
            country = rng.choice(["ES", "FR", "DE", "IN", "US", "", "Select"])
            logit = -1.2 + {"Referral": 1.2, "Partner": 0.8, "Chat": -0.6}.get(source, 0.0)
            logit += {"Manager": 0.9, "Student": -0.7}.get(role, 0.0)
            logit += 0.9 * math.log1p(minutes) - 4.5 + (0.15 * visits if visits != "" else -0.5)
            won = int(rng.random() < 1 / (1 + math.exp(-logit)))
            # Filled in by sales after the outcome: almost the label itself.
            status = ("Closed won" if won else "Lost") if rng.random() > 0.03 else "Open"
            out.writerow([f"L-{i:05d}", source, role, visits, minutes, country, status, won])
    return path
