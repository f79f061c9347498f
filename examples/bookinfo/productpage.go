package bookinfo

import (
	"fmt"
	"html/template"
	"log"
	"net/http"
	"strings"
	"sync"
)

// The book productpage shows.
const (
	bookTitle   = "The Comedy of Errors"
	bookSummary = "The Comedy of Errors is one of William Shakespeare's early plays. It is his shortest and one of his most farcical comedies, with a major part of the humour coming from slapstick and mistaken identity, in addition to puns and word play."
)

// userCookie keeps the user a browser signed in as with ?u=NAME.
const userCookie = "bookinfo-user"

type productPage struct {
	c *caller // to details and reviews
}

// page is what the template renders.
type page struct {
	Title, Summary string
	User           string

	Details         *Details
	DetailsInstance string
	DetailsError    string

	Reviews         *Reviews
	ReviewsVersion  string
	ReviewsInstance string
	ReviewsError    string
}

// serve renders GET /productpage. The user, matched by routes as x-user, is
// ?u=NAME (remembered in a cookie; ?u= signs out), else the request's x-user
// header, else the cookie.
func (p *productPage) serve(w http.ResponseWriter, r *http.Request) {
	user := userOf(w, r)
	out := r.Clone(r.Context())
	if user != "" {
		out.Header.Set("X-User", user)
	} else {
		out.Header.Del("X-User")
	}
	pg := page{Title: bookTitle, Summary: bookSummary, User: user}
	var wg sync.WaitGroup
	wg.Go(func() {
		var d Details
		a := p.c.getJSON(out, "http://details/details/1", &d)
		pg.DetailsInstance = a.Instance
		if a.Err != nil {
			pg.DetailsError = a.Err.Error()
			return
		}
		pg.Details = &d
	})
	wg.Go(func() {
		var rv Reviews
		a := p.c.getJSON(out, "http://reviews/reviews/1", &rv)
		pg.ReviewsInstance = a.Instance
		if a.Err != nil {
			pg.ReviewsError = a.Err.Error()
			return
		}
		pg.Reviews = &rv
		pg.ReviewsVersion = rv.Version
		if pg.ReviewsVersion == "" {
			pg.ReviewsVersion = a.Header.Get("X-Reviews-Version")
		}
	})
	wg.Wait()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := pageTemplate.Execute(w, pg); err != nil {
		log.Printf("productpage: rendering the page: %v", err)
	}
}

func userOf(w http.ResponseWriter, r *http.Request) string {
	if q := r.URL.Query(); q.Has("u") {
		u := strings.TrimSpace(q.Get("u"))
		c := &http.Cookie{Name: userCookie, Value: u, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode}
		if u == "" {
			c.MaxAge = -1
		}
		http.SetCookie(w, c)
		return u
	}
	if u := r.Header.Get("X-User"); u != "" {
		return u
	}
	if c, err := r.Cookie(userCookie); err == nil {
		return c.Value
	}
	return ""
}

// stars draws n of 5 stars.
func stars(n int) string {
	n = max(0, min(n, 5))
	return strings.Repeat("★", n) + strings.Repeat("☆", 5-n)
}

var pageTemplate = template.Must(template.New("productpage").Funcs(template.FuncMap{
	"stars": stars,
	"plural": func(n int, word string) string {
		if n == 1 {
			return fmt.Sprintf("%d %s", n, word)
		}
		return fmt.Sprintf("%d %ss", n, word)
	},
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Simple Bookstore App</title>
<style>
body { font-family: sans-serif; max-width: 60em; margin: 2em auto; padding: 0 1em; color: #222; }
.unavailable { color: #a00; border: 1px solid #a00; padding: .5em 1em; }
.served { color: #555; font-size: .9em; }
table td { padding: .1em 1em .1em 0; }
blockquote { margin: 1em 0; }
.stars { font-size: 1.3em; }
</style>
</head>
<body>
<p class="user">{{if .User}}Signed in as <b>{{.User}}</b> (calls carry <code>x-user: {{.User}}</code>) — <a href="/productpage?u=">sign out</a>{{else}}Not signed in — <a href="/productpage?u=jason">sign in as jason</a> to be routed by <code>x-user</code>{{end}}</p>
<h1>{{.Title}}</h1>
<p>{{.Summary}}</p>

<h2>Book Details</h2>
{{with .Details}}
<table>
<tr><td>Type:</td><td>{{.Type}}</td></tr>
<tr><td>Pages:</td><td>{{.Pages}}</td></tr>
<tr><td>Author:</td><td>{{.Author}}</td></tr>
<tr><td>Year:</td><td>{{.Year}}</td></tr>
<tr><td>Publisher:</td><td>{{.Publisher}}</td></tr>
<tr><td>Language:</td><td>{{.Language}}</td></tr>
<tr><td>ISBN-10:</td><td>{{.ISBN10}}</td></tr>
<tr><td>ISBN-13:</td><td>{{.ISBN13}}</td></tr>
</table>
<p class="served">Details served by instance {{$.DetailsInstance}}</p>
{{else}}
<p class="unavailable">Error fetching product details: details are currently unavailable ({{.DetailsError}})</p>
{{end}}

<h2>Book Reviews</h2>
{{with .Reviews}}
{{range .Reviews}}
<blockquote>
<p>{{.Text}}</p>
<footer>— {{.Reviewer}}</footer>
{{with .Rating}}{{if .Error}}<p class="unavailable">{{.Error}}</p>{{else}}<p class="stars" style="color: {{.Color}}" title="{{plural .Stars "star"}}">{{stars .Stars}} <small>({{.Color}} stars)</small></p>{{end}}{{end}}
</blockquote>
{{end}}
<p class="served">Reviews served by reviews-{{$.ReviewsVersion}} (instance {{$.ReviewsInstance}})</p>
{{else}}
<p class="unavailable">Error fetching product reviews: reviews are currently unavailable ({{.ReviewsError}})</p>
{{end}}
</body>
</html>
`))
