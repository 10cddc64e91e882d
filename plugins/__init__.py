"""Built-in Control Center plugins: process, storage and api."""
