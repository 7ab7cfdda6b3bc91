package sensor

// DTypeSize is the size in bytes of one element of the named dtype ("float32", "uint8", ...,
// the names agent/infer uses), or 0 if the name is not one a raw tensor can carry.
func DTypeSize(dtype string) int {
	switch dtype {
	case "uint8", "int8", "bool":
		return 1
	case "int16", "float16":
		return 2
	case "float32", "int32":
		return 4
	case "int64", "float64":
		return 8
	}
	return 0
}

// Elements is the number of elements of a tensor of the given shape (1 for a scalar), or -1
// if a dimension is not positive or the product overflows maxElements.
func Elements(shape []int) int {
	const maxElements = 1 << 30 // fits int on 32-bit ARM; far above any frame the agent accepts
	n := 1
	for _, d := range shape {
		if d <= 0 || n > maxElements/d {
			return -1
		}
		n *= d
	}
	return n
}
