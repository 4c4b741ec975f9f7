"""Store tests: the contract suite per adapter, durability, processes and crashes."""
