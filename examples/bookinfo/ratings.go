package bookinfo

import "net/http"

// Ratings is the ratings service's answer: the stars each reviewer gave.
type Ratings struct {
	ID      int            `json:"id"`
	Ratings map[string]int `json:"ratings"`
}

// serveRatings answers GET /ratings/{id}.
func serveRatings(w http.ResponseWriter, r *http.Request) {
	id, ok := bookID(w, r)
	if !ok {
		return
	}
	writeJSON(w, Ratings{ID: id, Ratings: map[string]int{"Reviewer1": 5, "Reviewer2": 4}})
}
