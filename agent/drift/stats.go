package drift

import "math"

// number is what the statistics read: counts (uint64) or frequencies (float64).
type number interface{ ~uint64 | ~float64 }

// PSIFloor is the proportion an empty bin is given in PSI, so that a bin empty on one side
// contributes a large but finite term instead of an infinite one.
const PSIFloor = 1e-4

// PSI is the population stability index of observed against expected, two histograms over
// the same bins (counts or frequencies; each is normalised to sum to 1):
//
//	PSI = Σ (p_i − q_i) · ln(p_i / q_i)
//
// with p_i, q_i the observed and expected proportions, each floored at PSIFloor. It is NaN
// when either side is empty or the bins differ in number. 0.1 is commonly read as a
// moderate shift and 0.2 as a significant one.
func PSI[A, B number](observed []A, expected []B) float64 {
	if len(observed) != len(expected) {
		return math.NaN()
	}
	so, se := sum(observed), sum(expected)
	if so <= 0 || se <= 0 {
		return math.NaN()
	}
	var psi float64
	for i := range observed {
		p := max(float64(observed[i])/so, PSIFloor)
		q := max(float64(expected[i])/se, PSIFloor)
		psi += (p - q) * math.Log(p/q)
	}
	return psi
}

// BinnedKS is the two-sample Kolmogorov–Smirnov statistic computed from two histograms over
// the same ordered bins: the largest absolute difference between their cumulative
// proportions at the bin boundaries. It is the exact KS statistic of the two samples
// evaluated only at the boundaries, so it never exceeds the statistic of the raw samples:
// the KS critical value stays valid (conservative) for it. NaN when either side is empty.
func BinnedKS[A, B number](observed []A, expected []B) float64 {
	if len(observed) != len(expected) {
		return math.NaN()
	}
	so, se := sum(observed), sum(expected)
	if so <= 0 || se <= 0 {
		return math.NaN()
	}
	var co, ce, d float64
	for i := range observed {
		co += float64(observed[i])
		ce += float64(expected[i])
		d = max(d, math.Abs(co/so-ce/se))
	}
	return d
}

// KSCritical is the two-sample KS critical value at significance alpha for samples of n and
// m observations (the large-sample formula): c(α)·√((n+m)/(n·m)), c(α) = √(−ln(α/2)/2).
// At alpha 0.01, c is 1.628; with n = 500 and m = 1000 the critical value is 0.089. m ≤ 0
// means a reference so large that only n counts.
func KSCritical(alpha float64, n, m int) float64 {
	c := math.Sqrt(-math.Log(alpha/2) / 2)
	if m <= 0 {
		return c * math.Sqrt(1/float64(n))
	}
	return c * math.Sqrt(float64(n+m)/(float64(n)*float64(m)))
}

func sum[T number](v []T) float64 {
	var s float64
	for _, x := range v {
		s += float64(x)
	}
	return s
}
