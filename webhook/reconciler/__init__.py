"""The NetworkPolicy reconciler (DESIGN.md section 6): level-based, a runtime beside the server."""
