module github.com/edge-agent/edge-agent

go 1.26

require (
	github.com/mattn/go-tflite v1.0.5
	golang.org/x/sys v0.38.0
)

require (
	aead.dev/minisign v0.3.0 // indirect
	github.com/eclipse/paho.mqtt.golang v1.5.0 // indirect
	github.com/gorilla/websocket v1.5.3 // indirect
	github.com/mattn/go-pointer v0.0.1 // indirect
	golang.org/x/crypto v0.25.0 // indirect
	golang.org/x/net v0.27.0 // indirect
	golang.org/x/sync v0.7.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
