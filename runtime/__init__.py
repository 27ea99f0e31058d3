"""What every process of either role runs on: its HTTP server (serving), its Prometheus metrics
(metrics), its supervised threads (supervision) and its signal-handled commands (commands)."""
