"""Live updates: the WebSocket that streams a workspace's domain events."""
