module github.com/edge-agent/edge-agent

go 1.26

require (
	github.com/mattn/go-tflite v1.0.5
	golang.org/x/sys v0.38.0
)

require github.com/mattn/go-pointer v0.0.1 // indirect
