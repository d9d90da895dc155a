"""Where state that outlives a request, or is shared between workers and instances, is kept."""
