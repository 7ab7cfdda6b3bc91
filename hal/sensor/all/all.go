// Package all registers every sensor kind; the agent imports it for its side effect. A slim
// build can import only the kinds it needs instead. It imports nothing from agent/.
package all

import (
	_ "github.com/edge-agent/edge-agent/hal/sensor/command"   // kind "command"
	_ "github.com/edge-agent/edge-agent/hal/sensor/csv"       // kind "csv"
	_ "github.com/edge-agent/edge-agent/hal/sensor/file"      // kind "file"
	_ "github.com/edge-agent/edge-agent/hal/sensor/http"      // kind "http"
	_ "github.com/edge-agent/edge-agent/hal/sensor/i2c"       // kind "i2c"
	_ "github.com/edge-agent/edge-agent/hal/sensor/mqtt"      // kind "mqtt"
	_ "github.com/edge-agent/edge-agent/hal/sensor/synthetic" // kind "synthetic"
)
