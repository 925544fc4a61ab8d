"""HTTP views served by every worker's Faust web server."""
