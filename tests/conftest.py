"""Shared test settings: the aioelect pytest plugin provides the etcd fixtures."""
