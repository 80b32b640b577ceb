"""Census coverage statistics: per domain and region, facilities registered, monitored, and reporting."""
