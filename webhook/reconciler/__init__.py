"""The reconciler: one NetworkPolicy per isolated sandbox, kept true (DESIGN.md section 6)."""
