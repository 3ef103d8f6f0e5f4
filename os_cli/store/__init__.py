"""The output folder: record format, sharded writer, folder lock and swap, resume scan, plan digests, integrity."""
