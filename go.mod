module github.com/edge-agent/edge-agent

go 1.26

require (
	aead.dev/minisign v0.3.0
	github.com/eclipse/paho.mqtt.golang v1.5.0
	github.com/mattn/go-tflite v1.0.5
	go.etcd.io/bbolt v1.4.0
	golang.org/x/crypto v0.25.0
	golang.org/x/sys v0.38.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/coreos/go-systemd/v22 v22.5.0 // indirect
	github.com/gorilla/websocket v1.5.3 // indirect
	github.com/mattn/go-pointer v0.0.1 // indirect
	github.com/minio/selfupdate v0.6.0 // indirect
	github.com/prometheus/client_golang v1.20.5 // indirect
	golang.org/x/net v0.27.0 // indirect
	golang.org/x/sync v0.10.0 // indirect
)
