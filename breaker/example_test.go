package breaker_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/natsmesh/natsmesh/breaker"
)

// A proxy asks the breaker before each call with Try, and tells it the
// call's result with the ticket's Done. After two failures in a row the
// breaker opens, and the third call is refused without being made.
func Example() {
	b := breaker.New("reviews", breaker.Settings{ConsecutiveFailures: 2})
	call := func() error { return errors.New("reviews answered 502") }
	for i := 1; i <= 3; i++ {
		ticket, err := b.Try()
		if err != nil {
			fmt.Printf("call %d: %v\n", i, err) // answer circuit-open
			continue
		}
		err = call()
		ticket.Done(result(err))
		fmt.Printf("call %d: %v\n", i, err)
	}
	fmt.Println("state:", b.State())
	// Output:
	// call 1: reviews answered 502
	// call 2: reviews answered 502
	// call 3: breaker: open
	// state: open
}

// result is what a call's error tells the breaker: a call its caller
// cancelled says nothing of the callee.
func result(err error) breaker.Result {
	switch {
	case err == nil:
		return breaker.Success
	case errors.Is(err, context.Canceled):
		return breaker.Ignore
	}
	return breaker.Failure
}
