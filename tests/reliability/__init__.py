"""Proof under fire: scenarios that try to lose or double an event (real processes, a real
SQLite file, the sandbox on loopback; seeded, bounded and asserting exact counts)."""
