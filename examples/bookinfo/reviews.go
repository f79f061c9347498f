package bookinfo

import (
	"fmt"
	"net/http"
)

// Reviews is the reviews service's answer. Version says which version of
// reviews served it (also in the X-Reviews-Version header). v1 gives no
// ratings; v2 and v3 ask ratings and give its stars in black (v2) or red
// (v3), or say why they have none.
type Reviews struct {
	ID      int      `json:"id"`
	Version string   `json:"version"`
	Reviews []Review `json:"reviews"`
}

// Review is one reviewer's review.
type Review struct {
	Reviewer string  `json:"reviewer"`
	Text     string  `json:"text"`
	Rating   *Rating `json:"rating,omitempty"`
}

// Rating is a review's stars, or Error when ratings could not be had.
type Rating struct {
	Stars int    `json:"stars,omitempty"`
	Color string `json:"color,omitempty"`
	Error string `json:"error,omitempty"`
}

type reviews struct {
	version string
	c       *caller // to ratings; nil for v1
}

var starColor = map[string]string{"v2": "black", "v3": "red"}

func (rv *reviews) serve(w http.ResponseWriter, r *http.Request) {
	id, ok := bookID(w, r)
	if !ok {
		return
	}
	out := Reviews{ID: id, Version: rv.version, Reviews: []Review{
		{Reviewer: "Reviewer1", Text: "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"},
		{Reviewer: "Reviewer2", Text: "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."},
	}}
	if rv.c != nil {
		var rt Ratings
		a := rv.c.getJSON(r, fmt.Sprintf("http://ratings/ratings/%d", id), &rt)
		for i := range out.Reviews {
			if a.Err != nil {
				out.Reviews[i].Rating = &Rating{Error: "Ratings service is currently unavailable (" + a.Err.Error() + ")"}
				continue
			}
			if stars, ok := rt.Ratings[out.Reviews[i].Reviewer]; ok {
				out.Reviews[i].Rating = &Rating{Stars: stars, Color: starColor[rv.version]}
			}
		}
	}
	w.Header().Set("X-Reviews-Version", rv.version)
	writeJSON(w, out)
}
