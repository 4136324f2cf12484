"""The reconciler: one NetworkPolicy per isolated sandbox, kept true (README "Isolation without a gap")."""
