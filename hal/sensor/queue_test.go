package sensor_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/edge-agent/edge-agent/hal/sensor"
	"github.com/edge-agent/edge-agent/hal/sensor/internal/sensortest"
)

func TestQueueDropsOldest(t *testing.T) {
	tests := []struct {
		capacity, pushes int
		wantCap          int
		wantDropped      uint64
		wantFirst        uint64 // Seq of the oldest frame left
	}{
		{capacity: 8, pushes: 3, wantCap: 8, wantDropped: 0, wantFirst: 1},
		{capacity: 8, pushes: 8, wantCap: 8, wantDropped: 0, wantFirst: 1},
		{capacity: 8, pushes: 9, wantCap: 8, wantDropped: 1, wantFirst: 2},
		{capacity: 3, pushes: 100, wantCap: 3, wantDropped: 97, wantFirst: 98},
		{capacity: 1, pushes: 5, wantCap: 1, wantDropped: 4, wantFirst: 5},
		{capacity: 0, pushes: 2, wantCap: 1, wantDropped: 1, wantFirst: 2}, // bound is at least 1
	}
	for _, tt := range tests {
		q := sensor.NewQueue(tt.capacity)
		for i := 1; i <= tt.pushes; i++ {
			q.Push(sensor.Frame{Seq: uint64(i)})
		}
		st := q.Stats()
		wantDepth := min(tt.pushes, tt.wantCap)
		if st.Capacity != tt.wantCap || st.Depth != wantDepth || st.Pushed != uint64(tt.pushes) || st.Dropped != tt.wantDropped {
			t.Errorf("cap %d, %d pushes: got %+v; want Capacity %d Depth %d Pushed %d Dropped %d",
				tt.capacity, tt.pushes, st, tt.wantCap, wantDepth, tt.pushes, tt.wantDropped)
		}
		// What is left is the newest frames, oldest first.
		for want := tt.wantFirst; want <= uint64(tt.pushes); want++ {
			f, ok := q.TryPop()
			if !ok || f.Seq != want {
				t.Errorf("cap %d, %d pushes: got frame %d (%v); want %d", tt.capacity, tt.pushes, f.Seq, ok, want)
				break
			}
		}
		if _, ok := q.TryPop(); ok {
			t.Errorf("cap %d, %d pushes: queue not empty after popping the survivors", tt.capacity, tt.pushes)
		}
	}
}

func TestQueuePopWaits(t *testing.T) {
	sensortest.NoLeaks(t)
	q := sensor.NewQueue(2)
	go func() {
		time.Sleep(20 * time.Millisecond)
		q.Push(sensor.Frame{Seq: 7})
	}()
	f, ok := q.Pop(context.Background())
	if !ok || f.Seq != 7 {
		t.Fatalf("Pop: got %d, %v; want 7, true", f.Seq, ok)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if f, ok := q.Pop(ctx); ok {
		t.Fatalf("Pop on empty queue with expiring ctx: got frame %d; want none", f.Seq)
	}

	q.Push(sensor.Frame{Seq: 8})
	q.Close()
	q.Push(sensor.Frame{Seq: 9}) // after Close: dropped
	if f, ok := q.Pop(context.Background()); !ok || f.Seq != 8 {
		t.Fatalf("Pop after Close: got %d, %v; want the queued frame 8", f.Seq, ok)
	}
	if _, ok := q.Pop(context.Background()); ok {
		t.Fatalf("Pop on closed empty queue: got a frame; want false")
	}
	if st := q.Stats(); st.Pushed != 3 || st.Dropped != 1 {
		t.Fatalf("Stats: got %+v; want Pushed 3 Dropped 1", st)
	}
}

// Every pushed frame is either popped or counted as dropped, under concurrent use.
func TestQueueConcurrentAccounting(t *testing.T) {
	sensortest.NoLeaks(t)
	q := sensor.NewQueue(4)
	const producers, each = 4, 2000
	var popped int
	var seen sync.Map
	consumers := sync.WaitGroup{}
	var mu sync.Mutex
	for range 2 {
		consumers.Add(1)
		go func() {
			defer consumers.Done()
			for {
				f, ok := q.Pop(context.Background())
				if !ok {
					return
				}
				if _, dup := seen.LoadOrStore(f.Seq, true); dup {
					t.Errorf("frame %d popped twice", f.Seq)
				}
				mu.Lock()
				popped++
				mu.Unlock()
			}
		}()
	}
	var wg sync.WaitGroup
	for p := range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				q.Push(sensor.Frame{Seq: uint64(p*each + i + 1)})
			}
		}()
	}
	wg.Wait()
	q.Close()
	consumers.Wait()
	st := q.Stats()
	if st.Pushed != producers*each || uint64(popped)+st.Dropped != st.Pushed || st.Depth != 0 {
		t.Fatalf("got Pushed %d, popped %d + Dropped %d, Depth %d; want %d = popped + dropped, depth 0",
			st.Pushed, popped, st.Dropped, st.Depth, producers*each)
	}
}
