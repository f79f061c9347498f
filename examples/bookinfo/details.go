package bookinfo

import "net/http"

// Details is the details service's answer: facts about a book.
type Details struct {
	ID        int    `json:"id"`
	Author    string `json:"author"`
	Year      int    `json:"year"`
	Type      string `json:"type"`
	Pages     int    `json:"pages"`
	Publisher string `json:"publisher"`
	Language  string `json:"language"`
	ISBN10    string `json:"ISBN-10"`
	ISBN13    string `json:"ISBN-13"`
}

// serveDetails answers GET /details/{id}. Every book has the details of The
// Comedy of Errors, as in Istio's sample.
func serveDetails(w http.ResponseWriter, r *http.Request) {
	id, ok := bookID(w, r)
	if !ok {
		return
	}
	writeJSON(w, Details{
		ID: id, Author: "William Shakespeare", Year: 1595, Type: "paperback",
		Pages: 200, Publisher: "PublisherA", Language: "English",
		ISBN10: "1234567890", ISBN13: "123-1234567890",
	})
}
