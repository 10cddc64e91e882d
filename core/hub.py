"""Broadcast of snapshots: one encoding per tick, latest value per subscriber.

Owned by the web layer; the supervisor only calls Hub.publish(doc).
"""
