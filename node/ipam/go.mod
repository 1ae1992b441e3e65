module fulcrum.dev/node/ipam

go 1.24
