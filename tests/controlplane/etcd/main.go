// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 (the upstream etcd
// binary's main package lives in the unpublished root module and only calls etcdmain.Main).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
