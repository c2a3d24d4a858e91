// etcd for scripts/cluster. Debian's etcd (3.4) is older than Kubernetes 1.34 supports, and
// `go install go.etcd.io/etcd/server/v3@...` refuses the module (its go.mod has replace
// lines), so this module requires the server and runs its main entry point.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
