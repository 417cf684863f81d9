# shard-inspect's tests
