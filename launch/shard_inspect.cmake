# shard-inspect (see launch/shard_inspect_main.cpp)
